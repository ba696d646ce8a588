"""Self-supervised training: the loop of `train_loop`, read top to bottom in the paper's order.

Every step, for each task that trains (spatial, temporal, or both for S+T; S&T: spatial until
`train.serial_switch`, then temporal from those weights):
  1. the step's batch of images (clips); which samples are readable, on all processes;
  2. a permutation per sample from the task's sampler (uniform, or the policy pi of Sect. 3.2;
     inside an episode the loop records them as its actions), the parts shuffled by it (Eq. 1);
  3. SGD: one forward of all tasks, the cross-entropies on the permutation index summed (S+T)
     and back-propagated once, the step refused if not finite (`bookkeeping.StepGuard`);
  4. the policy's cycle (`policy_step`): after N SGD steps the state s_t (Eq. 3-6) regroups
     Psi and fixes s_hat (Eq. 10), the next K mini-batches are the episode, after them
     E_{t+1} gives the reward (Eq. 7) and pi is updated (Eq. 9);
  5. held-out validation (the error of Eq. 6 over all |Psi| x |X_val| pairs), retrieval
     (`eval.knn_every`), an atomic checkpoint from which `--resume` continues exactly (the
     data of step s is a pure function of (seed, s)).
Two counters, each with one meaning: `step` is the index of the step being trained (its data,
crops, draws and dropout are a function of (seed, step)); `done` = step + 1 is the number of
SGD iterations done, what the schedule, the states, the logs ("step" in metrics.jsonl) and the
checkpoints count (the samplers' `iteration`).
`permrl.run.start_run` builds what the loop needs (`Run`); `permrl.tasks` opens each task's data and
sampler. Under torchrun the same function runs in every process; `permrl.distributed` says
what is shared how (each process builds its rows of the global batch, rank 0 draws the
permutations and runs the policy, DDP averages the gradients, rank 0 writes).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from tqdm import tqdm

from permrl.bookkeeping import LogWindow, StepAgreement, StepGuard, all_finite
from permrl.config import TASKS, Config, active_tasks
from permrl.data.batches import step_seed
from permrl.data.samples import shuffle_tiles
from permrl.data.sources import open_source
from permrl.distributed import (
    Distributed,
    DistributedError,
    cpu_fallback_notice,
    no_buffer_sync,
    nvidia_gpu_present,
    resolve_device,
)
from permrl.evaluate.knn import evaluate_knn
from permrl.models.heads import OrderingNet
from permrl.models.trunk import CaffeNetBN
from permrl.policy.cycle import Cycle
from permrl.policy.samplers import CycleSampler
from permrl.policy.state import sharded_state
from permrl.policy.twin import PairedTwin
from permrl.run import Run, RunResult, start_run, uses_twin
from permrl.run_dir import GracefulStop, RunError, last_validation
from permrl.tasks import (
    check_bad_fraction,
    no_parts,
    task_loader,
)


def policy_phase(cfg: Config, done: int) -> str | None:
    """Where `done` iterations fall in the policy's schedule (`permrl.policy.cycle.Cycle`):
    "episode_start" (validate -> s_t, groups, s_hat), "episode_end" (validate -> E_{t+1},
    reward, policy update) or None; always None for uniform draws."""
    r = cfg.cycle
    return None if cfg.policy == "uniform" else Cycle(r.sgd_steps, r.episode_batches).phase(done)


def retrieval_during_training(
    model: OrderingNet, cfg: Config, device: torch.device
) -> dict[str, Any]:
    """kNN Top-k of the current trunk on `eval.knn_train` / `eval.knn_test` (Fig. 5), with the
    same protocol as `permrl eval knn` (BN re-estimated on a copy; the model is untouched).
    The copy is a plain trunk: its BatchNorm never waits for other processes."""
    was_training = model.training
    trunk = CaffeNetBN(width=cfg.model.width, conv1_stride=cfg.model.conv1_stride).to(device)
    trunk.load_state_dict(model.trunk.state_dict())
    with torch.random.fork_rng(devices=[]):  # training's random stream stays untouched
        result = evaluate_knn(
            trunk, open_source(cfg.eval.knn_train), open_source(cfg.eval.knn_test),
            layer=cfg.eval.layer, input_size=cfg.eval.input_size,
            conv1_stride=cfg.eval.conv1_stride, device=device, precision=cfg.eval.precision,
        )
    model.train(was_training)
    return {f"knn_{k}": v for k, v in result.items() if k.startswith("top")}


def train(
    cfg: Config, run_dir: str | Path, *, resume: bool = False, force: bool = False,
    progress: bool = True, stop_at: int | None = None, init_from: str | Path | None = None,
) -> RunResult:
    """Train the trunk by spatial and/or temporal ordering; see the module docstring.

    `stop_at` ends the run early after that step with a checkpoint, as an interruption would;
    `resume=True` continues it to `train.steps`. `init_from`: a checkpoint whose weights and
    optimiser state this new run starts from, at step 0 with a fresh sampler and Psi kept (the
    Fig. 4 protocol, `permrl.fig4`). Under torchrun every process calls this and
    joins one process group for the run (see `permrl.distributed`).
    """
    try:
        env = Distributed.from_environment()
    except DistributedError as e:
        raise RunError(str(e)) from None
    device = resolve_device(cfg.train.device, env)
    if cfg.preset == "paper" and device.type == "cpu" and cfg.train.device != "cpu":
        raise RunError("preset paper without a usable GPU: ~1 s per step on the CPU, "
                       f"{cfg.train.steps} steps; set train.device=cpu to train on the CPU anyway"
                       + " (an NVIDIA GPU is present: install a CUDA build of torch)"
                       * nvidia_gpu_present())
    if env.is_main and (notice := cpu_fallback_notice(cfg.train.device, device)):
        print(notice, file=sys.stderr)
    if device.type == "cuda":  # fixed shapes every step: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    run_dir = Path(run_dir)
    new_dir = not run_dir.exists()
    env.start(device)
    try:
        result = train_processes(cfg, run_dir, env, device, resume=resume, force=force,
                                 progress=progress, stop_at=stop_at, init_from=init_from)
        env.barrier()  # every process done with its collectives before any tears the group down
        return result
    except BaseException:
        if new_dir and env.is_main and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves no folder
        raise
    finally:
        env.stop()


def train_processes(
    cfg: Config, run_dir: Path, env: Distributed, device: torch.device, *, resume: bool,
    force: bool, progress: bool, stop_at: int | None, init_from: str | Path | None = None,
) -> RunResult:
    """The run itself, on this process (one of `env.world_size`); see `train`."""
    run = start_run(cfg, run_dir, env, device, resume=resume, force=force, init_from=init_from)
    stop = GracefulStop()
    try:
        stopped, last_loss, val_acc = train_loop(run, stop, progress=progress, stop_at=stop_at)
    finally:  # the signal handlers never outlive train()
        stop.restore()
    return finish_run(run, stop, stopped, last_loss, val_acc)


def train_loop(
    run: Run, stop: GracefulStop, *, progress: bool, stop_at: int | None
) -> tuple[int | None, torch.Tensor | None, dict[str, float]]:
    """Steps `run.start` .. `train.steps` (or `stop_at`, or a stop signal): (the step stopped
    after or None, the last step's loss on the device, the last held-out accuracy)."""
    cfg, env, model = run.cfg, run.env, run.model
    loaders = {n: iter(task_loader(cfg, t, run.start, run.device)) for n, t in run.tasks.items()}
    forward = wrapped_for_training(run)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=cfg.train.amp and run.device.type == "cuda")
    guard = StepGuard(cfg, model, run.optimizer, run.scheduler)
    agree = StepAgreement(env, run.device, stop)
    window = LogWindow(list(run.tasks), env, run.device)
    bar = tqdm(total=cfg.train.steps, initial=run.start, unit="step", dynamic_ncols=True,
               disable=not (progress and env.is_main), file=sys.stderr)
    model.train()
    last_loss, val_acc, episodes = None, {}, {}
    try:
        for step in range(run.start, cfg.train.steps):
            # Dropout of this step on this process: a function of (seed, step, rank), so a
            # resumed run draws what the interrupted one would have.
            torch.manual_seed(step_seed(cfg.seed, step, 100 + env.rank))
            guard.before_forward()
            # 1. This step's batch of each task that trains; readable samples on all processes.
            batches = readable_batches(run, {n: next(loaders[n]) for n in active_tasks(cfg, step)})
            # 2. A permutation per sample from the sampler (pi in an episode), Eq. 1 shuffle.
            tiles, parts, targets = {}, {}, {}
            for name, (batch, readable) in batches.items():
                tiles[name], targets[name] = drawn_parts(run, name, step, batch, readable)
                parts[name] = shuffle_tiles(tiles[name], run.perms_on_device[name], targets[name])
            # 3. SGD on the summed task losses, refused on every process if one is not finite.
            finite = torch.ones((), dtype=torch.bool, device=run.device)
            if parts:
                with autocast:
                    logits = forward(parts)
                loss = ordering_loss(logits, targets, batches, env.world_size, window)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                finite = all_finite(loss, model)
            step_finite, stop_asked = agree(finite)  # the step's one host sync
            if parts:
                guard.step(step_finite, step + 1)
                last_loss = loss.detach().double()  # read once, after the loop
            if run.twin is not None and parts:  # the episode's paired twin: uniform draws
                twin_step(run, step, tiles, batches, autocast)
            run.scheduler.step()
            done = step + 1
            if done % cfg.train.log_every == 0 or done in (cfg.train.steps, stop_at):
                record, postfix = window.flush()
                run.log.write({"step": done, "lr": run.scheduler.get_last_lr()[0]} | record
                              | {"skipped": sum(t.unreadable for t in run.tasks.values())})
                bar.set_postfix(policy_postfix(episodes) | postfix)
            # 4. The policy's cycle (Sect. 3.2): state and regrouping, episode, reward, update.
            if phase := policy_phase(cfg, done):
                episodes |= policy_step(run, phase, done)
            # 5. Held-out validation, retrieval (Fig. 5), checkpoint.
            if (cfg.train.val_every and done % cfg.train.val_every == 0) or done == cfg.train.steps:
                val_acc = run.validate(done)
            if cfg.eval.knn_every and env.is_main and (
                    done % cfg.eval.knn_every == 0 or done == cfg.train.steps):
                run.log.write({"step": done} | retrieval_during_training(model, cfg, run.device))
            if done % cfg.train.checkpoint_every == 0 or done in (cfg.train.steps, stop_at):
                run.checkpoint(done)
            bar.update(1)
            if stop_asked:  # SIGINT / SIGTERM (on any process): finish the step, save, exit
                if done % cfg.train.checkpoint_every and done != cfg.train.steps:
                    run.checkpoint(done)
                return done, last_loss, val_acc
            if done == stop_at:
                break
    finally:
        bar.close()
        # The workers now, even with an exception on its way: they ignore SIGTERM (a signal to
        # the process group is the main process's to handle), so the interpreter's exit could
        # not stop them and would wait for them forever.
        loaders.clear()
    return None, last_loss, val_acc


def wrapped_for_training(run: Run) -> torch.nn.Module:
    """The model as the loop calls it: DDP under torchrun, compiled with `train.compile`."""
    forward: torch.nn.Module = run.model
    if run.env.enabled:  # gradients averaged over processes; BN buffers are already global
        forward = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=bool(run.cfg.train.serial_switch), **no_buffer_sync())
    if run.cfg.train.compile:
        forward = torch.compile(forward)
    return forward


def readable_batches(
    run: Run, fetched: dict[str, dict[str, Any]]
) -> dict[str, tuple[dict[str, Any], torch.Tensor]]:
    """Each task's batch with the readable samples of the global batch (all processes); a
    task with none sits the step out. Counts the unreadable ones (`data.max_bad_fraction`)."""
    batch_size = run.cfg.train.batch_size
    readable = torch.zeros(len(fetched), batch_size, dtype=torch.long)
    for k, b in enumerate(fetched.values()):
        readable[k, b["rows"]] = 1
    readable = run.env.sum(readable).bool()
    kept = {}
    for k, (name, batch) in enumerate(fetched.items()):
        task = run.tasks[name]
        task.skips.extend(batch["skipped"])
        task.attempted += batch_size
        task.unreadable += batch_size - int(readable[k].sum())
        check_bad_fraction(run.cfg, task)
        if task.skips.count and not task.warned:  # one line at the first skip
            tqdm.write(f"{task.skips.warning_line()} [{name}]", file=sys.stderr)
            task.warned = True
        if readable[k].any():
            kept[name] = (batch, readable[k])
    return kept


def drawn_parts(
    run: Run, name: str, step: int, batch: dict[str, Any], readable: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's parts of the batch in their original order and the permutation index
    drawn for each (the class; Eq. 1 shuffles the parts by it). The permutations are drawn on
    rank 0 for the whole batch (the sampler, and the policy, live there); each process takes
    its rows."""
    cfg, env, task = run.cfg, run.env, run.tasks[name]
    batch_size = cfg.train.batch_size
    gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 3 + TASKS.index(name)))
    drawn = torch.zeros(batch_size, dtype=torch.long)
    if env.is_main:
        drawn = task.sampler.draw(batch_size, gen)
        if task.sampler.in_episode:  # the episode's actions (an unreadable sample earns none)
            task.sampler.record(drawn[readable])
    perm_index = env.broadcast(drawn)[batch["rows"]]
    # Tiles (frames) built on the training device from the workers' uint8 crops.
    mine = task.batches.parts(batch, run.device)
    if mine is None:  # this process's shard is all unreadable: an empty batch (DDP needs all)
        mine = no_parts(cfg, name).to(run.device)
    return mine, perm_index.to(run.device, non_blocking=True)


def twin_step(run: Run, step: int, tiles: dict[str, torch.Tensor],
              batches: dict[str, tuple[dict[str, Any], torch.Tensor]], autocast: Any) -> None:
    """One SGD step of the episode's paired twin (`permrl.policy.twin`): the same parts and
    dropout masks as the network's step, permutations drawn uniformly over Psi (for the global
    batch, each process taking its rows; its gradients averaged over the processes as DDP
    averages the network's)."""
    parts, targets = {}, {}
    for name, tile in tiles.items():
        gen = torch.Generator().manual_seed(step_seed(run.cfg.seed, step, 20 + TASKS.index(name)))
        drawn = torch.randint(0, len(run.perms[name]), (run.cfg.train.batch_size,), generator=gen)
        targets[name] = drawn[batches[name][0]["rows"]].to(run.device)
        parts[name] = shuffle_tiles(tile, run.perms_on_device[name], targets[name])
    torch.manual_seed(step_seed(run.cfg.seed, step, 100 + run.env.rank))  # the same dropout

    def loss_of(model: torch.nn.Module) -> torch.Tensor:
        with autocast:
            logits = model(parts)
        return ordering_loss(logits, targets, batches, run.env.world_size)

    run.twin.step(loss_of, [g["lr"] for g in run.optimizer.param_groups],
                  run.env.average_gradients if run.env.enabled else None)


def ordering_loss(
    logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
    batches: dict[str, tuple[dict[str, Any], torch.Tensor]], world_size: int,
    window: LogWindow | None = None,
) -> torch.Tensor:
    """Cross-entropy on the permutation index, summed over the tasks (S+T). Each process's
    summed loss is scaled so that DDP's average is the mean over the global batch."""
    losses = {}
    for name, target in targets.items():
        x = logits[name]  # bf16 under autocast: the loss in float32 (float64 kept)
        summed = F.cross_entropy(x.to(torch.promote_types(x.dtype, torch.float32)), target,
                                 reduction="sum")
        losses[name] = summed * world_size / int(batches[name][1].sum())
        if window is not None:
            window.add(name, summed, logits[name], target)
    return sum(losses.values())


def policy_step(run: Run, phase: str, done: int) -> dict[str, dict[str, Any]]:
    """One turn of the cycle of Sect. 3.2 for each task that trains, after `done` steps.

    "episode_start" comes after N SGD steps with pi fixed, "episode_end" after the K
    mini-batches of the episode (whose permutations `drawn_parts` records). The state is
    computed by all processes; the policy lives on rank 0. With `cycle.reward_baseline:
    twin` the network is forked at the episode's start and the reward compares with the twin's
    state. Returns the finished episodes' records.
    """
    env, finished = run.env, {}
    for name in active_tasks(run.cfg, done - 1):  # the tasks of the step just trained
        sampler = cast(CycleSampler, run.tasks[name].sampler)  # (uniform has no cycle)
        if not env.on_main(lambda s=sampler: phase == "episode_start" or s.in_episode):
            continue  # (in S&T a task may join in mid-cycle: no episode to end)
        state = run.state_of(name, done)  # s_t: softmax ratios, Eq. 3, 4, 6 on X_val
        twin = None if run.twin is None or phase != "episode_end" else sharded_state(
            run.twin.model, name, run.tasks[name].val_parts, run.perms[name], env)
        if not env.is_main:
            continue
        if phase == "episode_end":
            r = sampler.reward(done, state, twin)  # Eq. 7: E_BL - E_{t+1} (or the twin's)
            episode = sampler.episode_record(done, state, twin)
            if r is not None:
                episode |= {"reward": r} | sampler.update(r)  # Eq. 9: REINFORCE on pi
            sampler.end_episode()
            run.log.write({"step": done, "task": name, "episode": sampler.updates} | episode)
            finished[name] = episode
        sampler.regroup(done, state)  # k-means groups of Psi and s_hat: Eq. 10
        if phase == "episode_start":
            sampler.begin_episode()  # the next K mini-batches
    run.twin = None
    if phase == "episode_start" and uses_twin(run.cfg):  # fork at the episode's start
        run.twin = PairedTwin(run.model, run.optimizer)
    return finished


def policy_postfix(episodes: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The last episode's error and reward of each task, for the progress bar."""
    postfix = {}
    for n, episode in episodes.items():
        postfix |= {f"{n[0]}_err": f"{episode['error_after']:.3f}",
                    f"{n[0]}_reward": f"{episode.get('reward', 0.0):.4f}"}
    return postfix


def finish_run(
    run: Run, stop: GracefulStop, stopped: int | None, last_loss: torch.Tensor | None,
    val_acc: dict[str, float],
) -> RunResult:
    """What the run says at its end, and its result (the same on every process)."""
    cfg, env = run.cfg, run.env
    if stopped is not None and env.is_main:
        print(f"permrl: {stop.name or 'a stop signal'} received: stopped after step "
              f"{stopped} with a checkpoint in {run.run_dir}", file=sys.stderr)
    if run.start >= cfg.train.steps:  # resuming a finished run: nothing to do, nothing to log
        val_acc = env.on_main(lambda: last_validation(run.run_dir / "metrics.jsonl"))
    for name, t in run.tasks.items():
        if t.skips.count:
            print(f"{t.skips.warning_line()} [{name}, whole run]", file=sys.stderr)
    # The last step's loss, the mean over the global batch (every process sums its share).
    has_loss = env.sum(torch.tensor(float(last_loss is not None), device=run.device)).item()
    loss_value = float("nan")
    if has_loss == env.world_size:
        loss_value = env.sum(last_loss).item() / env.world_size
    return RunResult(run.run_dir, stopped or cfg.train.steps, loss_value, val_acc,
                     sum(t.unreadable for t in run.tasks.values()),
                     # (a process stopped by its peers' signal reports SIGTERM)
                     stop_signal=(stop.signum or int(signal.SIGTERM)) if stopped else 0,
                     rank=env.rank)
