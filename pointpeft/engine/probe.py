"""The pretraining's linear probe: a linear classifier fit on frozen pooled features, scored on held-out features.

``solver: torch`` (default) minimises the same objectives scikit-learn does, in torch with L-BFGS on every thread
the trainer uses, all classes at once:

* ``svm``: one-vs-rest linear SVM with the squared hinge loss and an L2 penalty on the weights and the intercept,
  ``0.5 ||[w_k, b_k]||^2 + C sum_i max(0, 1 - y_ik (w_k x_i + b_k))^2`` (scikit-learn's ``LinearSVC`` defaults,
  the SVM Point-MAE / Point-BERT report);
* ``logreg``: multinomial logistic regression, ``C sum_i CE(W x_i + b, y_i) + 0.5 ||W||^2`` (``LogisticRegression``'s
  defaults; the intercept is not penalised).

Both objectives are smooth and convex, so L-BFGS reaches the optimum ``LinearSVC``'s dual coordinate descent
reaches; on 9,843 x 384 ModelNet40 features the torch solver takes seconds where ``LinearSVC`` took 8 minutes on one
core (benchmarks/README.md, probe section). ``solver: sklearn`` keeps the scikit-learn estimators.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from pointpeft.errors import ConfigError

PROBE_SOLVERS = ("torch", "sklearn")


def probe_due(epoch: int | None, every: int, total_epochs: int | None, evaluations: int) -> bool:
    """Whether the evaluation after ``epoch`` (1-based) probes: every ``every``-th epoch and the last one.

    Follows the epoch number, not a count of evaluations, so a resumed run probes where the uninterrupted run did.
    Without an epoch (an evaluation outside the trainer) every ``every``-th evaluation, the first included.
    """
    if epoch is None:
        return (evaluations - 1) % every == 0
    return epoch % every == 0 or (total_epochs is not None and epoch >= total_epochs)


def _standardize(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train_x.mean(0)
    std = train_x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # StandardScaler leaves constant features at scale 1
    return (train_x - mean) / std, (test_x - mean) / std


def _lbfgs(params: list[torch.Tensor], objective, max_iter: int) -> None:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)


def fit_torch(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, method: str, C: float,
              max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (d, K), b (K,)) minimising the ``method`` objective above (float64)."""
    n, d = train_x.shape
    W = torch.zeros(d, num_classes, dtype=train_x.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=train_x.dtype, requires_grad=True)
    # objectives divided by C * n: the same minimiser, gradients of order one for the stopping tolerances
    scale = 1.0 / (C * n)
    if method == "svm":
        signs = -torch.ones(n, num_classes, dtype=train_x.dtype)
        signs[torch.arange(n), train_y] = 1.0

        def objective() -> torch.Tensor:
            margin = (1.0 - signs * torch.addmm(b, train_x, W)).clamp_min(0.0)
            return (C * margin.pow(2).sum() + 0.5 * (W.pow(2).sum() + b.pow(2).sum())) * scale
    elif method == "logreg":
        def objective() -> torch.Tensor:
            ce = F.cross_entropy(torch.addmm(b, train_x, W), train_y, reduction="sum")
            return (C * ce + 0.5 * W.pow(2).sum()) * scale
    else:
        raise ConfigError(f"linear probe method must be 'svm' or 'logreg', got {method!r}")
    _lbfgs([W, b], objective, max_iter)
    return W.detach(), b.detach()


def _sklearn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                      method: str, C: float, standardize: bool, max_iter: int) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    clf = LinearSVC(C=C, max_iter=max_iter) if method == "svm" else LogisticRegression(C=C, max_iter=max_iter)
    model = make_pipeline(StandardScaler(), clf) if standardize else clf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean() * 100.0)


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                          method: str = "svm", C: float = 1.0, standardize: bool = True, max_iter: int = 5000,
                          solver: str = "torch") -> float:
    """Test accuracy (%) of a linear classifier fit on the train features: linear SVM (``svm``) or logistic
    regression (``logreg``), optionally after z-scoring with the train split's statistics; ``solver`` torch
    (L-BFGS, all classes at once) or sklearn (``LinearSVC`` / ``LogisticRegression``)."""
    if method not in ("svm", "logreg"):
        raise ConfigError(f"linear probe method must be 'svm' or 'logreg', got {method!r}")
    if solver not in PROBE_SOLVERS:
        raise ConfigError(f"linear probe solver must be one of {list(PROBE_SOLVERS)}, got {solver!r}")
    classes = np.unique(train_y)
    if len(classes) < 2:
        raise ConfigError(f"linear probe: the probe's train split has {len(classes)} class(es); "
                          "it needs labelled data with at least 2 classes")
    if solver == "sklearn":
        return _sklearn_accuracy(train_x, train_y, test_x, test_y, method, C, standardize, max_iter)
    # labels -> 0..K-1 over the train split's classes; a test label never seen in training is always wrong
    lookup = {int(c): i for i, c in enumerate(classes)}
    ty = torch.as_tensor([lookup[int(c)] for c in train_y])
    tx = torch.as_tensor(np.asarray(train_x), dtype=torch.float64)
    vx = torch.as_tensor(np.asarray(test_x), dtype=torch.float64)
    if standardize:
        tx, vx = _standardize(tx, vx)
    W, b = fit_torch(tx, ty, len(classes), method, C, max_iter)
    pred = classes[torch.addmm(b, vx, W).argmax(1).numpy()]
    return float((pred == np.asarray(test_y)).mean() * 100.0)
