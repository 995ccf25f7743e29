"""Engine replicas behind a router, in one SimPy simulation: where each request goes is decided
when it arrives, from the replicas' state at that moment (online replays; an offline batch is
split before it starts, ``traces/sharding.py``).

Routers (``ROUTERS``):
- ``least_loaded``: the replica with the fewest unfinished requests (vLLM's and most gateways'
  "least outstanding requests");
- ``cache_aware``: in the manner of SGLang's model gateway (SMG, docs/concepts/routing/
  cache-aware.md, lightseekorg/smg): the replica whose routed prompts share the longest prefix
  with this one, where that covers more than ``cache_threshold`` of the prompt, else the least
  loaded; the least loaded outright when the loads are out of balance (max - min >
  ``balance_abs`` and max > ``balance_rel`` x min). Its defaults are SMG's documented ones (0.3,
  64, 1.5). The router's view of a replica's cache is what was routed there in the last
  ``history_s`` seconds (SMG evicts its tree every 120 s by default), not the cache itself.

Each replica runs the simulator's loop; a request is schedulable in its replica's first step
that starts at or after its arrival, as in ``sim/simulator.py``. With ``fast_forward``, a
replica whose plans are known in advance (a decode stretch) runs them in one event, up to the
next arrival to the cluster, whichever replica it goes to: the router sees every replica as it
would step by step (a stretch finishes requests only in its last step, at its end), and the
records are the same to the last bit (a test holds them). A closed loop (a client pool,
``Workload.closed_loop``) sends each client's next request when its last one finished on any
replica, and is simulated step by step.

The replicas' host-memory KV tiers (``config.host_cache_blocks`` each) may be pooled
(``shared_host``): one tier of all their blocks, which every replica writes through to and loads
from, as Mooncake's store pools the DRAM of every machine (Qin et al., FAST '25); a load of a
block another replica stored is costed at the network's bandwidth (``pool_bandwidth``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import simpy

from scheduler import Scheduler, ScheduleConfig
from scheduler.contract import new_step_result
from scheduler.errors import ConfigError
from scheduler.gc_pause import cyclic_gc_paused
from scheduler.host_tier import HostTier
from scheduler.prompt import ChainIndex
from traces.client_pool import add_sent, arrival_order
from traces.step_log import StepLog
from traces.workload import Workload

from .cost_model import KERNELS, CostModel
from .simulator import SimOutcome, loads_in, lookahead, record_stretch, start_loads

ROUTERS = ("least_loaded", "cache_aware")


@dataclass(frozen=True)
class RouterConfig:
    policy: str = "cache_aware"
    cache_threshold: float = 0.3   # share of the prompt a replica must hold to be chosen for it
    balance_abs: int = 64          # unfinished requests: out of balance past this difference ...
    balance_rel: float = 1.5       # ... and this ratio
    history_s: float = 120.0       # how long a routed prompt counts as cached where it went

    def __post_init__(self) -> None:
        if self.policy not in ROUTERS:
            raise ConfigError(f"unknown router {self.policy!r}; expected one of {list(ROUTERS)}")
        for name, ok, expected in (("cache_threshold", 0 <= self.cache_threshold <= 1, "in [0, 1]"),
                                   ("balance_rel", self.balance_rel >= 1, ">= 1"),
                                   ("history_s", self.history_s > 0, "seconds > 0")):
            if not ok:
                raise ConfigError(f"router.{name} is {getattr(self, name)!r}; expected {expected}")


class Router:
    def __init__(self, config: RouterConfig, replicas: int, block_size: int) -> None:
        self.config = config
        self.replicas = replicas
        self.block_size = block_size
        self.routed = [0] * replicas
        self.chains = ChainIndex(block_size)  # block identities, the same for every replica
        self.last = np.full((replicas, 1024), -math.inf)  # [replica, block key]: when last routed there

    def choose(self, request, now: float, unfinished: list[int]) -> int:
        least = min(range(self.replicas), key=unfinished.__getitem__)
        if self.config.policy == "least_loaded":
            return least
        keys = self.chains.full_block_keys(request.prompt)
        if len(keys) and keys[-1] >= self.last.shape[1]:
            grown = np.full((self.replicas, max(2 * self.last.shape[1], int(keys[-1]) + 1)), -math.inf)
            grown[:, :self.last.shape[1]] = self.last
            self.last = grown
        high, low = max(unfinished), unfinished[least]
        if high - low > self.config.balance_abs and high > self.config.balance_rel * low:
            choice = least
        else:
            fresh = self.last[:, keys] >= now - self.config.history_s  # [replica, block]
            held = np.where(fresh.all(axis=1), len(keys), np.argmin(fresh, axis=1)) if len(keys) else \
                np.zeros(self.replicas, dtype=int)
            best = int(held.max())
            choice = least
            if best * self.block_size > self.config.cache_threshold * request.prompt_len:
                choice = min((k for k in range(self.replicas) if held[k] == best), key=unfinished.__getitem__)
        self.last[choice, keys] = now
        return choice

    def route(self, request, now: float, finished: list[int]) -> int:
        """The replica ``request`` goes to, given how many each has finished; counted as routed."""
        k = self.choose(request, now, [routed - done for routed, done in zip(self.routed, finished)])
        self.routed[k] += 1
        return k


def simulate_cluster(workload: Workload, config: ScheduleConfig, cost: CostModel, num_kv_blocks: int,
                     block_size: int, replicas: int, router: RouterConfig,
                     step_dirs: list[Path | None] | None = None,
                     progress: Callable[[str], None] | None = None, progress_every_s: float = 2.0,
                     fast_forward: bool = True, shared_host: bool = False) -> list[SimOutcome]:
    """One outcome per replica (its scheduler holds the requests routed to it)."""
    started = time.perf_counter()
    cost = cost.for_schedule(config.name)
    pool = HostTier(config.host_cache_blocks * replicas) if shared_host and config.host_cache_blocks else None
    chains = ChainIndex(block_size) if pool is not None else None  # one set of identities for the pool
    window = cost.model.window_blocks(block_size, cost.tensor_parallel)
    schedulers = [Scheduler(config, num_kv_blocks, block_size, emit_block_ids=False, host=pool, replica=k,
                            chains=chains, window_blocks=window) for k in range(replicas)]
    closed, ordered, requests = arrival_order(workload)  # a closed loop's clients extend `requests`
    for request in ordered:  # every request checked before anything is simulated
        schedulers[0].check_fits(request)
    if closed is not None:
        fast_forward = False  # another replica's finish may send a request at any step
    logs = [StepLog(KERNELS, None if step_dirs is None else step_dirs[k]) for k in range(replicas)]
    route = Router(router, replicas, block_size)
    env = simpy.Environment()
    total = len(workload.requests)
    # "send_awaited": closed loop, the event the arrivals process waits on while no client has a
    # request on its way; "rearm": the one that wakes it, asleep until the next arrival, when a
    # client sends one due earlier (sessions arriving on their own)
    state = {"next": 0, "events": 0, "report": time.perf_counter(), "send_awaited": None, "rearm": None}
    idle: list[simpy.Event | None] = [None] * replicas
    decode_s: list[float | None] = [None] * replicas  # each replica's last decode step, for lookahead

    def deliver(now: float) -> None:
        """Routes every request arrived by ``now``, in arrival order, waking idle replicas at
        its arrival."""
        index = state["next"]
        while index < len(requests) and requests[index].arrival_s <= now:
            request = requests[index]
            k = route.route(request, now, [scheduler.num_finished for scheduler in schedulers])
            schedulers[k].add(request)
            if idle[k] is not None:
                idle[k], event = None, idle[k]
                event.succeed(request.arrival_s)
            index += 1
        state["next"] = index

    def release(k: int, now: float) -> None:
        """Closed loop: the requests clients send as theirs finished on replica ``k`` at ``now``
        (the end of its step), to be routed when they arrive."""
        sent = closed.sent_after(schedulers[k].finished_last_update, now)
        add_sent(requests, state["next"], sent)
        for waiting in ("send_awaited", "rearm"):  # the arrivals process waits for one to be sent, or sleeps
            if sent and state[waiting] is not None:
                state[waiting], event = None, state[waiting]
                event.succeed()

    def arrivals():
        while state["next"] < total:
            if state["next"] >= len(requests):  # closed loop: wait for a client to send one
                state["send_awaited"] = env.event()
                yield state["send_awaited"]
                continue
            arrival = requests[state["next"]].arrival_s
            if arrival > env.now:
                state["rearm"] = env.event()
                yield env.timeout(arrival - env.now) | state["rearm"]
                state["rearm"] = None
                continue  # the next arrival again: a client may have sent one due earlier
            deliver(env.now)

    def wake(k: int, delay: float) -> simpy.Event:
        """A replica's step (or stretch) ends: at one instant, replicas go in index order, after
        whatever else is due then, however their events were made (a decode stretch makes one
        where step by step made many; which replica writes to a shared tier first must not
        depend on that)."""
        event = simpy.Event(env)
        event._ok, event._value = True, None  # triggered, as simpy's Timeout makes itself, but due
        env.schedule(event, 2 + k, delay)     # behind its NORMAL (1) events at that instant, by replica
        return event

    def engine(k: int):
        """The simulator's loop, a step or a decode stretch at a time, on the replica's own clock (``now``: the
        same additions as ``sim/simulator.py``, which SimPy's clock follows)."""
        scheduler, log = schedulers[k], logs[k]
        loads: list[tuple[float, int]] = []  # (when in, request): host-tier loads beside the steps
        channel = 0.0  # when the replica's host link is free
        now = 0.0
        while True:
            deliver(now)  # a step starting now takes what arrived by now, routed first
            if loads and loads[0][0] <= now:  # requests whose blocks are in run from this step
                scheduler.loads_done(loads_in(loads, now))
            if not scheduler.has_unfinished:
                if state["next"] >= total:
                    return
                idle[k] = env.event()
                now = max(now, (yield idle[k]))
                continue
            state["events"] += 1
            if progress is not None and time.perf_counter() - state["report"] >= progress_every_s:
                state["report"] = time.perf_counter()
                progress(f"{config.name}: simulated {now:,.1f} s, {state['next']:,}/{total:,} requests arrived, "
                         f"{sum(s.num_finished for s in schedulers):,} finished")
            if fast_forward:
                next_arrival = requests[state["next"]].arrival_s if state["next"] < len(requests) else math.inf
                horizon = min(next_arrival, loads[0][0]) if loads else next_arrival  # or a load done
                look = lookahead(now, horizon, decode_s[k])
                stretch = scheduler.decode_stretch(look) if look > 1 else None
                if stretch is not None:  # its steps that start before the next event, in one event
                    count, ends, decode_s[k] = record_stretch(scheduler, log, cost, stretch, now, horizon)
                    end = float(ends[count - 1])
                    yield wake(k, max(end - env.now, 0.0))
                    scheduler.advance_decodes(stretch, count, ends)
                    now = end
                    continue
            waiting = scheduler.num_waiting
            plan = scheduler.schedule(now)
            if plan.is_empty and not plan.loading:  # nothing fits until more arrives, or a load is in
                if loads:
                    woken = idle[k] = env.event()
                    ready = loads[0][0]
                    got = yield woken | env.timeout(max(ready - env.now, 0.0))
                    if woken in got:
                        now = max(now, got[woken])
                    else:
                        idle[k] = None
                        now = max(now, ready)
                    continue
                if state["next"] >= total:
                    raise RuntimeError(f"{config.name}: replica {k + 1}: empty plan with nothing left to arrive")
                idle[k] = env.event()
                now = max(now, (yield idle[k]))
                continue
            if plan.loading:
                channel = start_loads(loads, channel, plan, now, cost)
            duration, kernels, (tokens, prefill, sampled) = cost.step(plan)
            log.add_row((plan.step, now, duration, tokens, prefill, tokens - prefill, plan.num_requests, sampled,
                         scheduler.kv.num_used_blocks, waiting, len(plan.preempted), plan.loaded_tokens),
                        kernels)  # STEP_COLUMNS
            end = now + duration
            yield wake(k, max(end - env.now, 0.0))
            scheduler.update(plan, new_step_result(plan.step, duration), end)
            now = end
            if closed is not None:
                release(k, now)

    env.process(arrivals())
    for k in range(replicas):
        env.process(engine(k))
    with cyclic_gc_paused():
        env.run()
    wall = time.perf_counter() - started
    outcomes = []
    for scheduler, log in zip(schedulers, logs):
        finishes = [s.finish_s for s in scheduler.states.values() if s.request is not None and s.finish_s]
        outcomes.append(SimOutcome(config.name, scheduler, log, max(finishes, default=0.0), wall, state["events"],
                                   cost.profile.label, cost.profile.kind))
    return outcomes
