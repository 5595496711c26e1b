"""smartbrush.train: the training stream over shard sets and the SmartBrush fine-tuning loop. Reads
shard sets only through smartbrush.schemas (no Apache Beam)."""
