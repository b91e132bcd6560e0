"""Plausible wrong answers to 08.PreallocatedKVCache."""

import torch


def _cache(mistake):
    class Cache:
        def __init__(self, n_layers, batch, n_kv_heads, head_dim, max_len):
            self.batch, self.max_len, self.calls = batch, max_len, 0
            self.k = torch.zeros(n_layers, batch, n_kv_heads, max_len, head_dim)
            self.v = torch.zeros_like(self.k)
            self.filled = [0] * n_layers
            self.grown = [None] * n_layers

        @property
        def length(self):
            return self.calls if mistake == "length counts update calls" else self.filled[0]

        def layer(self, i):
            cache = self

            class _Layer:
                def update(self, k_new, v_new):
                    start, end = cache.filled[i], cache.filled[i] + k_new.size(2)
                    if end > cache.max_len and mistake != "no capacity check":
                        raise ValueError("full")
                    cache.calls += k_new.size(2)
                    cache.filled[i] = end
                    if mistake == "torch.cat (grows a new tensor every step)":
                        old = cache.grown[i]
                        cache.grown[i] = (k_new, v_new) if old is None else (torch.cat([old[0], k_new], 2), torch.cat([old[1], v_new], 2))
                        return cache.grown[i]
                    if mistake == "overwrites from slot 0":
                        start, end = 0, k_new.size(2)
                    cache.k[i, :, :, start:end] = k_new
                    cache.v[i, :, :, start:end] = v_new
                    return cache.k[i, :, :, :cache.filled[i]], cache.v[i, :, :, :cache.filled[i]]

            return _Layer()

    return Cache


WRONG = {
    "08.PreallocatedKVCache": {m: _cache(m) for m in (
        "length counts update calls", "torch.cat (grows a new tensor every step)", "overwrites from slot 0", "no capacity check")},
}
