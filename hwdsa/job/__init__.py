"""The pruning job (`hwdsa prune`): its configuration, the resumable phases, and the report it writes."""

from hwdsa.job.config import BudgetSpec, PruneJobConfig
from hwdsa.job.report import PruneReport
from hwdsa.job.run import PruneJob

__all__ = ["BudgetSpec", "PruneJob", "PruneJobConfig", "PruneReport"]
