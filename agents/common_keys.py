"""The config keys every agent understands: their defaults, types, ranges and meanings.

``BaseAgent.config_schema`` is this dict; an agent extends it with its own keys (and may drop
the ones that mean nothing to it, as DQN drops the data-loader keys). ``python main.py CONFIG
--keys`` prints it with a config's values.
"""

from utils.config import (
    REQUIRED,
    Key,
    check_device,
    check_monitor,
    check_resume,
    check_workers,
    plain_name,
    relative_path,
    torch_object_key,
)
from utils.project.slurm import slurm_key
from utils.run.loggers import check_loggers
from utils.run.loggers.tracking import check_tracking_uri
from utils.training.callbacks import check_callbacks
from utils.training.compile import compile_key
from utils.training.schedules import scheduler_key

COMMON_KEYS: dict[str, Key] = {
    "exp_name": Key(REQUIRED, str, "run directory name under experiments/", check=plain_name),
    "agent": Key(REQUIRED, str, "agent class name, looked up in agents/__init__.py"),
    "description": Key("", str, "free text, kept with the run"),
    "mode": Key(
        "train",
        str,
        "train; test: evaluate best.pth (or resume) on the test split; predict: outputs from inputs "
        "(agents that make them); export: the network to ONNX and torch.export files under export/, verified",
        choices=("train", "test", "predict", "export"),
    ),
    "seed": Key(1, int, "seeds python, numpy, torch and loader workers", min=0, max=2**31 - 1),
    "deterministic": Key(False, bool, "enforce deterministic kernels (slower on GPU; off: cudnn.benchmark)"),
    "torch_threads": Key(
        None, int, "CPU threads for torch ops (null: torch's default)", min=1, max=1024, nullable=True
    ),
    "device": Key("auto", str, "auto (CUDA when present), cpu, cuda, cuda:N", check=check_device),
    "max_epoch": Key(10, int, "train until this many epochs are done", min=1, max=10**6),
    "validate_every": Key(1, int, "validate every N epochs (and after the last)", min=1),
    "resume": Key(
        "auto",
        (str, bool),
        "auto: continue from checkpoints/last.pth when present; a path (relative: to the repository): "
        "start from that file (the same command again: from the run's own last.pth); "
        "false: never (an error if checkpoints exist)",
        check=check_resume,
    ),
    "init_weights": Key(
        None,
        str,
        "fine-tuning: a checkpoint (relative: to the repository) whose model weights (averaged, where it kept an "
        "EMA) start a new run, a tensor of another shape (a new head) keeping its initial value; epochs, optimizer "
        "and schedule start afresh; not with resume=PATH (a run that has its own last.pth goes on from that)",
        nullable=True,
    ),
    "data_mode": Key(
        REQUIRED,
        str,
        "download, folder (the dataset's files under data_root) or random (synthetic, for smoke runs)",
        choices=("download", "folder", "random"),
    ),
    "data_root": Key("data", str, "dataset directory; relative paths are under the repository", check=relative_path),
    "experiments_dir": Key(
        "experiments", str, "where run directories go; relative to the repository", check=relative_path
    ),
    "batch_size": Key(64, int, "per process: the global batch is batch_size x processes", min=1, max=2**20),
    "accumulate_grad_batches": Key(1, int, "batches per optimizer step (gradients summed, loss averaged)", min=1),
    "num_workers": Key(
        0,
        (int, str),
        'data-loader worker processes; "auto": one per core this process may use, less one (0 with one core)',
        check=check_workers,
    ),
    "amp": Key(
        None,
        str,
        "mixed precision: null, bf16 or fp16 (fp16 uses a grad scaler)",
        choices=("bf16", "fp16"),
        nullable=True,
    ),
    "grad_clip_norm": Key(None, float, "clip the gradient norm to this value", min=1e-12, nullable=True),
    "ema_decay": Key(
        None,
        float,
        "keep an EMA of the weights (e.g. 0.999) for validation, best.pth and test",
        min=0.0,
        max=1.0,
        nullable=True,
    ),
    "compile": compile_key(),
    "channels_last": Key(False, bool, "channels-last memory format for 4-D models and batches (GPU + AMP)"),
    "sync_batchnorm": Key(False, bool, "convert BatchNorm to SyncBatchNorm under DDP"),
    "log_every": Key(50, int, "log (and read the loss on the host, check NaN and Ctrl-C) every N steps", min=1),
    "profile_steps": Key(0, int, "profile N training steps into out/profile_trace.json (0: off)", min=0),
    "monitor": Key(
        "max valid/accuracy", str, "'max <metric>' or 'min <metric>' choosing best.pth", check=check_monitor
    ),
    "early_stop_patience": Key(
        None, int, "stop after N validations without improvement of monitor (null: off)", min=1, nullable=True
    ),
    "early_stop_min_delta": Key(0.0, float, "the smallest change of monitor that counts as improvement", min=0.0),
    "checkpoint_every": Key(0, int, "also keep checkpoints/epoch_N.pth every N epochs (0: off)", min=0),
    "keep_checkpoints": Key(0, int, "how many epoch_N.pth to keep (0: all)", min=0),
    "max_train_batches": Key(None, int, "debug: stop each epoch after N batches", min=1, nullable=True),
    "max_valid_batches": Key(None, int, "debug: validate on N batches", min=1, nullable=True),
    "max_test_batches": Key(None, int, "mode=test evaluates the first N batches (null: all)", min=1, nullable=True),
    "optimizer": torch_object_key(
        "torch.optim", "optimizer", {"type": "SGD", "args": {"lr": 0.01}}, "a torch.optim class and its arguments"
    ),
    "scheduler": scheduler_key(
        None,
        "a torch.optim.lr_scheduler class and its arguments, or a list run one after the other; "
        'an argument "total" is the run\'s length; ReduceLROnPlateau gets the monitored metric',
    ),
    "scheduler_interval": Key(
        "epoch", str, "step the scheduler after every epoch or every optimizer step", choices=("epoch", "step")
    ),
    "loggers": Key(
        ["tensorboard"],
        list,
        "where scalars and images go besides metrics.csv and summary.json (always written): tensorboard, "
        "mlflow (pip install mlflow), wandb (pip install wandb), csv (scalars.csv: step,name,value)",
        check=check_loggers,
    ),
    "mlflow_tracking_uri": Key(
        None,
        str,
        "loggers=mlflow: http://host:port (a server), sqlite:///file.db, ...; null: experiments/mlflow.db",
        nullable=True,
        check=check_tracking_uri,
    ),
    "mlflow_experiment": Key(
        None,
        str,
        "loggers=mlflow: the experiment; null: a sweep's name, else exp_name before '_exp', else the agent",
        nullable=True,
    ),
    "wandb_project": Key(None, str, "loggers=wandb: the project; null: as mlflow_experiment", nullable=True),
    "wandb_mode": Key(
        "online",
        str,
        "loggers=wandb: online, offline (written under the run's wandb/, for wandb sync) or disabled",
        choices=("online", "offline", "disabled"),
    ),
    "callbacks": Key(
        [],
        list,
        'your own callbacks (utils/training/callbacks.py): [{"type": "package.module.Class", "args": {...}}]',
        check=check_callbacks,
    ),
    "slurm": slurm_key(),
}

# mode=predict's input, for the agents that predict from image files (a key of theirs, not a common one).
PREDICT_INPUT = Key(None, str, "mode=predict: an image file or a folder of images", nullable=True)
