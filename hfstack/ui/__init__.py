"""The browser and terminal faces: the guarded loopback HTTP server, the chat and ranking pages
(package data), and the token view."""
