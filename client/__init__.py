"""The data owner's side of lmeraser: summaries, routing and local prompt training."""
