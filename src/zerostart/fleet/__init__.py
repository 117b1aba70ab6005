"""Fleet tools: the ready-capacity buffer LP, a trace-driven fleet simulator, cluster manifests."""
