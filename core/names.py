"""The names the tool is built from, defined once and torch-free: click choices, the store, the monitor and
the TUI read them from here."""

# the pipeline, in order; group stages run one job per non-empty timestep group
STAGES = (
    "base",
    "schedule",
    "trunk",
    "prune",
    "finetune",
    "assemble",
    "control",
    "uniform",
    "dense-small",
    "sample",
    "eval",
)
GROUP_STAGES = ("prune", "finetune")
# the whole-run training stages: with several slots (GPUs, or CPU slots of `--parallel N`), or several GPUs per
# Slurm job, one job trains on all of them (torchrun, DDP: the batch split between the ranks). On CPU that is
# also the fastest use of the cores for a small model, whose one process scales badly with threads
# (bench/results/cpu_speed.md).
DDP_STAGES = ("base", "control")
# the stages that checkpoint mid-way (training): stopped by a time limit, they continue where they were; the
# others (prune, sample, eval) would start again, so a time limit shorter than their work is said at once
CHECKPOINTING_STAGES = ("base", "trunk", "finetune", "control")

# how group models are pruned: the LLM proxy, an importance criterion, or not at all
# the importance criteria, each a class of core/method/importance.py and its settings: a new criterion is one
# class there and one line here (``seeded``: the class takes the run's seed)
IMPORTANCE_CRITERIA = {
    "random": ("RandomImportance", {"seeded": True}),
    "magnitude": ("MagnitudeImportance", {}),
    "lamp": ("MagnitudeImportance", {"lamp": True}),
    "taylor": ("TaylorImportance", {}),
    "diff": ("DiffPruningImportance", {}),
}
IMPORTANCE_METHODS = tuple(IMPORTANCE_CRITERIA)
PRUNE_METHODS = ("proxy", *IMPORTANCE_METHODS, "scratch", "none")
ALLOCATIONS = ("uniform", "global")

# budget over timesteps: Eq. 8 (snr), the Table 3 comparisons, or equal-size groups
SCHEDULE_KINDS = ("snr", "constant", "increasing", "decreasing", "equal", "snr-reversed")

# the group models: whole models each (the paper's), or one shared encoder with a decoder per group
# (``finetune.trunk``, core/method/trunk.py)
TRUNKS = ("separate", "shared")

SAMPLERS = ("ancestral", "ddim")
NOISE_SCHEDULES = ("cosine", "linear")
# the models a run evaluates: stage 1, the equal-compute control (stage 1 trained on for the steps of every
# group's fine-tune together), and the progressive model
# (and, where the run has them, the controls at equal inference cost: one copy pruned to the progressive model's
# average MACs, fine-tuned on all timesteps, manager/stages/uniform.py; a dense narrower UNet of that cost trained
# from scratch for as many steps, manager/stages/dense.py)
SAMPLE_MODELS = ("base", "control", "uniform", "dense-small", "progressive")
CONTROLS = ("control", "uniform", "dense-small")
# the stages a switch turns on: stage -> (its config key, the value that turns it on); a run with the switch off
# does not list them
OPTIONAL_STAGES = {
    "trunk": ("finetune.trunk", "shared"),
    "uniform": ("control.uniform", True),
    "dense-small": ("control.dense", True),
}
# the comparisons a run reports, (model, against)
MODEL_PAIRS = (
    ("progressive", "control"),
    ("progressive", "uniform"),
    ("progressive", "dense-small"),
    ("progressive", "base"),
    ("control", "base"),
)
METRICS = ("fid", "kid")

# files a job produced (store table ``artifacts``)
ARTIFACT_KINDS = ("model", "checkpoint", "schedule", "plot", "plan", "samples", "eval", "report")

# job and run states (store tables ``jobs`` and ``runs``)
JOB_ACTIVE = ("queued", "running")
JOB_FINAL = ("succeeded", "failed", "killed", "lost", "preempted")  # preempted: Slurm's signal, checkpointed
# partial: some stages done and the rest still to run (a study's shared stage 1, or one stage run on its own)
RUN_STATUSES = ("created", "running", "partial", "succeeded", "failed", "killed", "lost")
# seconds a stopped job gets to checkpoint after SIGINT, before SIGTERM and then SIGKILL
GRACE_S = 10.0

# a stage as the monitor shows it
STAGE_STATES = ("pending", "running", "done", "skipped", "failed", "killed", "lost", "preempted")
