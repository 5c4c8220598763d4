"""Memory: what a training step needs, what the machine has, and what a run does about it.

==============  ==================================================================
``estimate``    the memory plan's arithmetic: weights, gradients, optimizer, activations
``system``      what the device has left, and a piece of work's measured peak
``plan``        a run's plan against what there is: refused in one line when it does not fit
``batch``       ``batch_size: auto`` and :func:`find_max_batch_size`: real steps say what fits
``heap``        on a CPU, glibc keeps the memory a step frees for the next one
``watch``       on a CPU, save and stop before the machine runs out during a run
==============  ==================================================================
"""

from nima.memory.batch import BatchFit, find_max_batch_size, fit_batch
from nima.memory.estimate import HEADROOM, MemoryPlan, estimate_training_memory
from nima.memory.plan import memory_refusal, out_of_memory, plan_memory
from nima.memory.system import available_memory, measure_peak, system_memory_left
from nima.memory.watch import MemoryWatch

__all__ = [
    "HEADROOM",
    "BatchFit",
    "MemoryPlan",
    "MemoryWatch",
    "available_memory",
    "estimate_training_memory",
    "find_max_batch_size",
    "fit_batch",
    "measure_peak",
    "memory_refusal",
    "out_of_memory",
    "plan_memory",
    "system_memory_left",
]
