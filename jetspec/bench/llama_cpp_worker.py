"""The llama.cpp peers' own process: loads llama-cpp-python's `Llama` and generates for
`llama_cpp_peer.LlamaCppPeers`, which starts it as `python3 <this file>`.

Why a separate process: on the H200 machine `torch` and llama-cpp-python's CUDA build cannot share
one process - import torch, then load a `llama_cpp.Llama`, and the model load segfaults (in
`llama_cpp/_internals.py`, at tokenizer init); importing llama_cpp first and torch after does too,
while a process that never imports torch loads and generates fine. It also leaves llama.cpp alone
in its process on the GPU, as a user running it would. So this file imports the standard library
and `llama_cpp` only, and runs as a script, never as `jetspec.bench.llama_cpp_worker` (that would
import the `jetspec` package, hence torch).

Protocol, JSON lines (UTF-8), each reply flushed at once:
* first line in: the load request
      {"model_path": str, "n_gpu_layers": int, "n_ctx": int, "flash_attn": bool, "require_gpu": bool,
       "peers": [str, ...] (of "llama.cpp:greedy", "llama.cpp:lookup"),
       "max_ngram": int, "num_pred_tokens": int (the lookup draft), "llama_cpp_dir": str | null}
  reply: {"ready": true, "n_vocab": int, "version": str, "gpu_offload": bool}, or one line
  {"error": str} and exit status 1 (llama_cpp not importable, no GPU offload where required, a
  model that does not load).
* then one line in per generation: {"peer": str, "prompt": [int, ...], "max_new_tokens": int, "eos": [int, ...]}
  reply: {"tokens": [int, ...], "seconds": float}, or {"error": str} (the process carries on).
* end of input: exit status 0.
"""

from __future__ import annotations

import json
import os
import sys
import time

# `python3 <this file>` puts this file's folder (jetspec/bench) first on sys.path, where `config`,
# `datasets`, `plots`, ... would shadow the packages of those names: take it off.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]


def first_line(e: BaseException) -> str:  # llama_cpp_peer._first_line's twin: this script imports no jetspec
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def send(reply: dict) -> None:
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def load(request: dict) -> tuple[dict, str]:
    """({peer: Llama}, "") with every requested peer loaded, or ({}, why not)."""
    where = request.get("llama_cpp_dir")
    if where and where not in sys.path:  # the llama_cpp the parent found, if this path would not find it
        sys.path.insert(0, where)
    try:
        import llama_cpp
    except Exception as e:  # ImportError, or a shared library that does not load
        return {}, f"llama_cpp is not importable ({first_line(e)}); pip install llama-cpp-python"
    if request["require_gpu"] and not llama_cpp.llama_supports_gpu_offload():
        return {}, "llama-cpp-python was built without GPU offload (build it with CMAKE_ARGS=\"-DGGML_CUDA=on\")"
    models = {}
    for name in request["peers"]:
        draft = None
        if name == "llama.cpp:lookup":  # the same model, drafting from n-grams of its context
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

            draft = LlamaPromptLookupDecoding(max_ngram_size=request["max_ngram"], num_pred_tokens=request["num_pred_tokens"])
        try:
            models[name] = llama_cpp.Llama(
                model_path=request["model_path"], n_gpu_layers=request["n_gpu_layers"], n_ctx=request["n_ctx"],
                flash_attn=request["flash_attn"], draft_model=draft, verbose=False,
                # with a draft model llama-cpp-python keeps every position's logits (it sets logits_all
                # itself) but sizes their table by this argument: n_batch (512) rows unless it is True,
                # too few once prompt + continuation pass 512 positions
                logits_all=draft is not None,
            )
        except Exception as e:
            return {}, f"llama.cpp cannot load {os.path.basename(request['model_path'])}: {first_line(e)}"
    return models, ""


def generate(model, prompt: list[int], max_new_tokens: int, eos: list[int]) -> list[int]:
    """Greedy continuation of `prompt` (token ids, fed as they are - not re-tokenised text): at most
    `max_new_tokens` ids, ending with the first token of `eos` if one comes (and keeping it).

    Greedy is temp=0 (llama.cpp's greedy sampler: argmax of the logits) with every other sampler
    neutral (top_k=1, top_p=1, min_p=0, repeat_penalty=1), so the output is argmax decoding, which
    our plain decoding is too; the lookup peer's draft only changes how many tokens one model call
    verifies, not which tokens come out."""
    model.reset()  # forget the last call's tokens: its prompt must not be reused from the KV cache
    out: list[int] = []
    if max_new_tokens <= 0:
        return out
    stops = set(eos)
    steps = model.generate(list(prompt), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True)
    try:
        for token in steps:
            out.append(int(token))
            if len(out) >= max_new_tokens or token in stops:
                break
    finally:
        steps.close()
    return out


def main() -> int:
    line = sys.stdin.readline()
    try:
        request = json.loads(line)
    except ValueError as e:
        send({"error": f"llama.cpp worker: bad load request ({first_line(e)})"})
        return 1
    models, why = load(request)
    if why:
        send({"error": why})
        return 1
    import llama_cpp

    n_vocab = next(iter(models.values())).n_vocab() if models else 0
    send({"ready": True, "n_vocab": n_vocab, "version": llama_cpp.__version__, "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload())})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            call = json.loads(line)
            model = models[call["peer"]]
            t0 = time.perf_counter()
            tokens = generate(model, call["prompt"], call["max_new_tokens"], call["eos"])
            seconds = time.perf_counter() - t0  # reset + prompt evaluation + decoding, as one in-process call took
        except Exception as e:
            send({"error": first_line(e)})
            continue
        send({"tokens": tokens, "seconds": seconds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
