"""The paper's method: SNR schedule and timestep groups, structural pruning to a MACs budget, importance
criteria, the LLM proxy, the progressive model, and model artifacts."""
