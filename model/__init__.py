"""smartbrush.model: reserved for the model stage (see ARCHITECTURE.md); it reads only the shard format."""
