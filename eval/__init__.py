"""smartbrush.eval: reserved for the eval stage (see ARCHITECTURE.md); it reads only the shard format."""
