"""What every stage stands on, importing nothing else from hfstack: config loading, recipes, the run
layout and its markers, launches, model and token helpers, the chat protocol, files and telemetry."""
