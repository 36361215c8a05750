"""The data pipeline: sources (open and read text streams), packing and the train loader."""
