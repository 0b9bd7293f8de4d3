"""The teacher runs once: a view-exact cache of a frozen teacher's outputs for many students.

``lightning-kd cache`` (:mod:`lightning_kd.caching.command`) runs a KD config's teacher(s) over
the exact training views of every epoch (:mod:`lightning_kd.caching.build`) and writes a
memory-mapped store with a manifest (:mod:`lightning_kd.caching.store`). A student config then
sets ``teacher_cache: DIR`` on its module and may leave the teacher network out; the run
refuses a cache built for other data, views, seed, classes, precision or teacher weights.
"""

from lightning_kd.caching.build import build_cache, run_description
from lightning_kd.caching.store import (
    CACHE_FORMAT,
    CacheManifest,
    TeacherCache,
    rebuild_logits,
    state_dict_sha256,
)

__all__ = [
    "CACHE_FORMAT",
    "CacheManifest",
    "TeacherCache",
    "build_cache",
    "rebuild_logits",
    "run_description",
    "state_dict_sha256",
]
