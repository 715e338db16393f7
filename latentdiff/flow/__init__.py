"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023; Esser et al. 2024, SD3): the training
objective (`objective.py`). Its process row and samplers travel with the pipeline (pipelines/flow_process.py)."""

from latentdiff.flow.objective import FlowNoised, FlowObjective

__all__ = ["FlowNoised", "FlowObjective"]
