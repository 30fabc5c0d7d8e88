"""Training engine: trainer, tasks (classification, MAE pretraining), optimizers, schedules, AMP, DDP, checkpoints."""

from pointpeft.engine import classification, mae_task  # noqa: F401  (register the tasks)
from pointpeft.engine.amp import AmpPolicy, resolve_amp
from pointpeft.engine.classification import ClassificationTask, accuracy_metrics, build_classifier, predict
from pointpeft.engine.options import DataOptions, TrainOptions
from pointpeft.engine.train_state import BEST_DIR, LAST_NAME, read_train_state, save_train_state
from pointpeft.engine.trainer import Trainer, TrainingDiverged, build_task, make_loader

__all__ = [
    "BEST_DIR", "LAST_NAME", "AmpPolicy", "ClassificationTask", "DataOptions", "TrainOptions", "Trainer",
    "TrainingDiverged", "accuracy_metrics", "build_classifier", "build_task", "make_loader", "predict",
    "read_train_state", "resolve_amp", "save_train_state",
]
