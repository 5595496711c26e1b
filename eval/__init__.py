"""smartbrush.eval: benchmark sets and importers, sampling every method, FID / local FID / CLIP score /
background and mask metrics, reports and comparisons. Reads shard sets through smartbrush.schemas."""
