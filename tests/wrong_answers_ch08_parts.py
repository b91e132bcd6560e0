"""Plausible wrong answers to 08.generate_with_cache."""

import torch


def _gen(model, prompt, n, temperature, top_k, seed, mistake):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits, cache = model.forward_with_cache(prompt)
        ids = prompt
        for step in range(n):
            z = logits[:, 0 if mistake == "first position's logits" else -1, :]
            if temperature == 0:
                nxt = z.argmax(-1, keepdim=True)
            else:
                if mistake != "temperature ignored":
                    z = z * temperature if mistake == "multiplies by the temperature" else z / temperature
                if top_k is not None and mistake != "top-k filter skipped":
                    z = z.masked_fill(z < torch.topk(z, top_k, dim=-1).values[:, -1:], float("-inf"))
                probs = torch.softmax(z, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=None if mistake == "ignores the seed" else g)
            ids = torch.cat([ids, nxt], dim=1)
            if step < n - 1:
                if mistake == "feeds the whole sequence to the cache again":
                    logits, cache = model.forward_with_cache(ids[:, -2:], cache)
                elif mistake == "restarts the cache with only the new token":
                    logits, cache = model.forward_with_cache(nxt)
                else:
                    logits, cache = model.forward_with_cache(nxt, cache)
    return ids


WRONG = {
    "08.generate_with_cache": {m: (lambda mo, p, n, t, k, s, m=m: _gen(mo, p, n, t, k, s, m)) for m in (
        "first position's logits", "temperature ignored", "multiplies by the temperature", "top-k filter skipped",
        "ignores the seed", "feeds the whole sequence to the cache again", "restarts the cache with only the new token")},
}
