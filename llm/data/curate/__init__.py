"""Corpus curation (`llm data curate`): normalize, filter, scrub, deduplicate, decontaminate,
split and shard a corpus in one streaming pass with bounded memory."""
