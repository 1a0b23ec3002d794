"""Code shared by the lmeraser server and client: backbone, data, prompts, seeds."""
