"""The memory's ``state_dict`` with ages: saved as ``ages`` (clock - write_time), loaded back
into a write clock, and validated whole before anything is loaded (``Memory`` mixes it in).

The keys travel in their stored dtype (``key_dtype``); loading casts them to the memory's own, so
a float32 state loads into a compact memory (rounded) and a compact state into a float32 one
(exactly).
"""

from __future__ import annotations

import torch

from lifelong.errors import MemoryStateError
from lifelong.memory.checks import check_state, check_state_keys
from lifelong.memory.protocol import LoadResult


class MemoryState:
    """``load_state_dict`` and its hooks for ``lifelong.memory.Memory`` (an ``nn.Module`` with
    keys, values, recent_slots, write_time, clock, insert_order and search)."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False
                        ) -> LoadResult:
        """Loads a ``state_dict()``: keys [N, d], values [N], ages [N], recent_slots [V] (and
        query_proj [d, d] when the memory learns one), validated whole before anything is
        loaded.

        Args:
            state_dict: the state.
            strict: refuse names the memory's state lacks, or lacks of its own; with False,
                unexpected names are ignored (keys, values, ages and recent_slots are needed
                either way).
            assign: as ``torch.nn.Module.load_state_dict``.

        Returns:
            LoadResult(missing_keys, unexpected_keys): the names not loaded.

        Raises:
            MemoryStateError: the state does not fit (nothing changed).
        """
        own = self.state_dict(keep_vars=True)
        missing, unexpected = check_state_keys(state_dict, own, strict)
        self._check_state(state_dict, "")
        for name, tensor in own.items():
            given = state_dict.get(name)
            if name not in ("keys", "values", "ages", "recent_slots") and given is not None \
                    and (not isinstance(given, torch.Tensor) or given.shape != tensor.shape):
                raise MemoryStateError(f"{name!r} must be {list(tensor.shape)}, got "
                                       f"{list(getattr(given, 'shape', []))}")
        super().load_state_dict(state_dict, strict=False, assign=assign)
        return LoadResult(missing_keys=missing, unexpected_keys=unexpected)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "ages"] = self.ages.clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        self._check_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if prefix + "ages" in unexpected_keys:
            unexpected_keys.remove(prefix + "ages")
        ages = state_dict[prefix + "ages"].to(self.write_time.device)
        with torch.no_grad():
            self.clock.fill_(int(ages.max()) if ages.numel() else 0)
            self.write_time.copy_(self.clock - ages)
        self.insert_order.invalidate()
        self.reset_search()

    def _check_state(self, state_dict, prefix) -> None:
        """Validates a whole state before any of it is loaded, so a bad one changes nothing."""
        check_state(state_dict, self.key_dim, self.num_slots, self.num_values, prefix)

