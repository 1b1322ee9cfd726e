"""Conversations for supervised finetuning: generators and the mixture."""
