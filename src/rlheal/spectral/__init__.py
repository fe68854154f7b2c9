"""Spectral diagnostics and SVD edits of Hugging Face checkpoints (see docs/SPECTRAL.md)."""

from rlheal.spectral.alignment import ALIGNMENT, run_alignment, update_alignment
from rlheal.spectral.angles import principal_angles, subspace_angles
from rlheal.spectral.cache import DecompositionCache
from rlheal.spectral.edit import edit_checkpoint, edit_matrix
from rlheal.spectral.linalg import Decomposition, SpectralError, decompose, resolve_k
from rlheal.spectral.metrics import SPECTRAL, SPECTRAL_SIGMA, aggregate, matrix_metrics
from rlheal.spectral.references import reference_pairs
from rlheal.spectral.sweep import run_spectrum
from rlheal.spectral.weights import CheckpointWeights, WeightsError

__all__ = [
    "ALIGNMENT", "SPECTRAL", "SPECTRAL_SIGMA", "CheckpointWeights", "Decomposition", "DecompositionCache", "SpectralError",
    "WeightsError", "aggregate", "decompose", "edit_checkpoint", "edit_matrix", "matrix_metrics",
    "principal_angles", "reference_pairs", "resolve_k", "run_alignment", "run_spectrum", "subspace_angles",
    "update_alignment",
]
