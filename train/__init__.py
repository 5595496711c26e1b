"""smartbrush.train: reserved for the train stage (see ARCHITECTURE.md); it reads only the shard format."""
