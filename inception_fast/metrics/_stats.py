"""The metrics over features, in float64: streaming mean and covariance (FeatureStats), the Fréchet
distance of two Gaussians, the kernel inception distance (KID) and the Inception Score (IS).

The Fréchet distance is |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2). The trace of the
matrix square root is taken as the sum of the singular values of F1^T F2, where F F^T = S comes from
a symmetric eigen-decomposition (F = V diag(sqrt(w))): (F1^T F2)(F1^T F2)^T = F1^T S2 F1 has the
eigenvalues of S1 S2 (float64 throughout). This is stable where scipy's sqrtm of the non-symmetric
product S1 S2 (as pytorch-fid computes it) can return complex values, and it works at the scale of
the covariances, not of their product. On a well-conditioned pair both agree to ~1e-9 relative.
Where a covariance is (near) singular -- fewer samples than dimensions -- the eigenvalues that
rounding makes slightly negative are taken as 0 here (a set against itself then gives ~0, at
rounding level); pytorch-fid adds 1e-6 to the diagonal of both covariances only when its sqrtm is
not finite and drops the imaginary part, and its result can then be far off.
"""
from __future__ import annotations

import os
import numpy as np
import torch


class FeatureStats:
    """Mean and covariance of feature vectors seen in batches (float64), without holding them: sums
    of the vectors and of their outer products, each taken about the first batch's mean (so that
    large means cost no precision). covariance() divides by n - 1, as numpy.cov (pytorch-fid)."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.n = 0
        self._shift: torch.Tensor | None = None
        self._sum = torch.zeros(self.dim, dtype=torch.float64)
        self._outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {tuple(features.shape)}")
        f = features.detach().to("cpu", torch.float64)
        if self._shift is None:
            self._shift = f.mean(0)
        f = f - self._shift
        self.n += f.shape[0]
        self._sum += f.sum(0)
        self._outer += f.T @ f

    def mean(self) -> np.ndarray:
        if self.n == 0:
            raise ValueError("no features seen")
        return (self._shift + self._sum / self.n).numpy()

    def covariance(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        centred = self._outer - torch.outer(self._sum, self._sum) / self.n
        return (centred / (self.n - 1)).numpy()


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """mu and sigma as pytorch-fid writes them (`--save-stats`): an .npz with arrays 'mu', 'sigma'."""
    np.savez_compressed(path, mu=np.asarray(mu, dtype=np.float64), sigma=np.asarray(sigma, dtype=np.float64))


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of an .npz as pytorch-fid writes it, after a ValueError if it is not one."""
    with np.load(path) as f:
        missing = [k for k in ("mu", "sigma") if k not in f.files]
        if missing:
            raise ValueError(f"{os.fspath(path)!r} has no {' or '.join(missing)} (arrays: {f.files}); "
                             "statistics files hold 'mu' (D,) and 'sigma' (D, D), as pytorch-fid's --save-stats")
        mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{os.fspath(path)!r}: mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D)")
    return mu, sigma


def _scaled_eigenvectors(a: torch.Tensor) -> torch.Tensor:
    """V diag(sqrt(w)) of the eigen-decomposition a = V diag(w) V^T of a symmetric PSD matrix (the
    eigenvalues rounding makes slightly negative taken as 0): a factor F with F F^T = a."""
    w, v = torch.linalg.eigh(a)
    return v * w.clamp(min=0).sqrt()


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64 (module docstring)."""
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(s), dtype=torch.float64) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu2.shape[0] != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"dimensions differ: mu {mu1.shape[0]} / {mu2.shape[0]}, sigma {tuple(s1.shape)} / "
                         f"{tuple(s2.shape)} (statistics of different --dims?)")
    if not all(torch.isfinite(t).all() for t in (mu1, mu2, s1, s2)):
        return float("nan")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    # tr((S1 S2)^1/2) = the sum of the singular values of F1^T F2 (F F^T = S): the matrix is of
    # the covariances' scale, not of their product's, so the null directions of a singular pair stay
    # at rounding level instead of growing to sqrt(rounding) of the product
    tr_covmean = torch.linalg.svdvals(_scaled_eigenvectors(s1).T @ _scaled_eigenvectors(s2)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float | None, coef0: float) -> float:
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    kxx = (x @ x.T * gamma + coef0) ** degree
    kyy = (y @ y.T * gamma + coef0) ** degree
    kxy = (x @ y.T * gamma + coef0) ** degree
    m = x.shape[0]
    return float((kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
                 - 2 * kxy.sum() / (m * m))


def kernel_inception_distance(features1, features2, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
                              gamma: float | None = None, coef0: float = 1.0, seed: int = 2020) -> dict[str, float]:
    """KID (Bińkowski et al. 2018) as torch-fidelity computes it: the unbiased MMD^2 with the kernel
    (x.y * gamma + coef0) ** degree (gamma 1 / dims), over `subsets` random subsets of subset_size
    from each set (numpy's RandomState(seed), as torch-fidelity draws them); {'kid_mean', 'kid_std'}."""
    f1 = torch.as_tensor(np.asarray(features1), dtype=torch.float64)
    f2 = torch.as_tensor(np.asarray(features2), dtype=torch.float64)
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    if min(len(f1), len(f2)) < subset_size:
        raise ValueError(f"KID subset size {subset_size} is larger than a feature set ({len(f1)}, {len(f2)}): "
                         "pass a smaller subset_size")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = f1[torch.from_numpy(rng.choice(len(f1), subset_size, replace=False))]
        b = f2[torch.from_numpy(rng.choice(len(f2), subset_size, replace=False))]
        mmds[i] = _mmd2_unbiased(a, b, degree, gamma, coef0)
    return {"kid_mean": float(np.mean(mmds)), "kid_std": float(np.std(mmds))}


def inception_score(logits, splits: int = 10, shuffle: bool = True, seed: int = 2020) -> dict[str, float]:
    """The Inception Score (Salimans et al. 2016) as torch-fidelity computes it: the logits (N, C)
    shuffled (numpy's RandomState(seed).permutation), in `splits` parts, exp(mean KL(p(y|x) || p(y)))
    of each, in float64; {'is_mean', 'is_std'}."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if z.dim() != 2 or len(z) < splits:
        raise ValueError(f"logits must be (N, C) with N >= splits ({splits}), got {tuple(z.shape)}")
    if shuffle:
        z = z[torch.from_numpy(np.random.RandomState(seed).permutation(len(z)))]
    p, log_p = z.softmax(1), z.log_softmax(1)
    n, scores = len(z), []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(0, keepdim=True)
        scores.append(float((p[lo:hi] * (log_p[lo:hi] - q.log())).sum(1).mean().exp()))
    return {"is_mean": float(np.mean(scores)), "is_std": float(np.std(scores))}
