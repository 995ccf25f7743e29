"""batchlab's shared scheduler: pure Python, no clock, no device, no SimPy.

Arrows point here: ``sim/`` and ``engine/`` drive the same ``Scheduler`` through
``schedule(now) -> BatchPlan`` and ``update(plan, StepResult, now)``.
"""
from .config import SCHEDULES, ScheduleConfig, schedule_config
from .contract import BatchPlan, DecodeBatch, ScheduledChunk, SharedPrefixGroup, StepResult
from .errors import ConfigError, SchedulerStuck, WorkloadError
from .grouping import Grouping, PrefixGroup, group_requests
from .kv_blocks import BlockManager
from .prompt import ChainIndex, Prompt, Segment, prompt_length, validate_prompt
from .request import Request, RequestState
from .scheduler import Scheduler
from .stats import SchedulerStats

__all__ = [
    "SCHEDULES", "ScheduleConfig", "schedule_config", "BatchPlan", "DecodeBatch", "ScheduledChunk",
    "SharedPrefixGroup", "StepResult", "ConfigError", "SchedulerStuck", "WorkloadError",
    "Grouping", "PrefixGroup", "group_requests", "BlockManager", "ChainIndex", "Prompt",
    "Segment", "prompt_length", "validate_prompt", "Request", "RequestState", "Scheduler",
    "SchedulerStats",
]
