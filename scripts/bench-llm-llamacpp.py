#!/usr/bin/env python3
"""llama.cpp side of scripts/bench-llm.sh: the same GGUF, prompt, thread count and greedy decoding
as models/benches/bench_llm.rs. Needs `llama-cpp-python` (built from source with
CMAKE_ARGS="-DGGML_NATIVE=ON").

    bench-llm-llamacpp.py MODEL.gguf [GEN_TOKENS] [--no-mmap]
"""
import os
import resource
import statistics
import sys
import time

from llama_cpp import Llama

SYSTEM = ("You are Sandra, a helpful assistant that people talk to on WhatsApp. "
          "Answer clearly and concisely, in the language of the question.")
USER = ("I am planning a three-day trip to Lisbon in early spring with two friends. We like "
        "walking, good food, old neighbourhoods, music and museums, but we do not want to "
        "spend much money. We arrive on Friday morning by train and leave on Sunday evening. "
        "Could you suggest a plan for each day, with a few places to eat that are not too "
        "touristy, what kind of weather to expect, how to get around the city cheaply, and "
        "one or two day trips we could take instead if it rains? Also tell us which areas "
        "are best to stay in for a group of three on a budget, and anything we should book "
        "in advance. Please keep it practical.")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    model = args[0]
    gen_tokens = int(args[1]) if len(args) > 1 else 128
    mmap = "--no-mmap" not in sys.argv
    t = time.perf_counter()
    llm = Llama(model_path=model, n_threads=2, n_threads_batch=2, n_ctx=2048, n_batch=512,
                use_mmap=mmap, verbose=False)
    load_s = time.perf_counter() - t
    arch = llm.metadata.get("general.architecture", "")
    vocab_has = lambda s: len(llm.tokenize(s.encode(), add_bos=False, special=True)) == 1
    if vocab_has("<|start_header_id|>"):
        prompt = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM +
                  "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" + USER +
                  "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    else:
        prompt = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER}<|im_end|>\n"
                  "<|im_start|>assistant\n")
        if arch == "qwen3":
            prompt += "<think>\n\n</think>\n\n"
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    stops = {llm.token_eos()} | {t for s in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>")
                                 for t in llm.tokenize(s.encode(), add_bos=False, special=True)
                                 if vocab_has(s)}
    prefill, gen = [], []
    generated = 0
    for _ in range(int(os.environ.get("BENCH_RUNS", "3"))):
        llm.reset()
        t = time.perf_counter()
        llm.eval(tokens)
        t_prefill = time.perf_counter() - t
        t = time.perf_counter()
        n = 0
        while n < gen_tokens:
            tok = llm.sample(temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0)
            if tok in stops:
                break
            n += 1
            if n == gen_tokens:
                break
            llm.eval([tok])
        t_gen = time.perf_counter() - t
        prefill.append(len(tokens) / t_prefill)
        gen.append(n / t_gen)
        generated = n
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"llama.cpp\tmmap={mmap}\tload_s={load_s:.2f}\tprompt_tokens={len(tokens)}\t"
          f"gen_tokens={generated}\tprefill_tok_s={statistics.median(prefill):.1f}\t"
          f"gen_tok_s={statistics.median(gen):.1f}\tpeak_rss_mb={rss_mb:.0f}\tthreads=2")




def compare_tokens(dump):
    """Compares `SANDRA_TOKENIZER_DUMP` JSON lines (see models/tests/it/chat_real.rs) with llama.cpp."""
    import json
    import pathlib
    models = {}
    bad = 0
    for line in open(dump):
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        path = pathlib.Path(os.environ.get("SANDRA_MODELS_DIR", ".models")) / row["model"]
        if path not in models:
            models[path] = Llama(model_path=str(path), vocab_only=True, verbose=False)
        ref = models[path].tokenize(row["text"].encode(), add_bos=False, special=True)
        same = ref == row["ids"]
        bad += not same
        print(("same " if same else "DIFF ") + row["model"] + " " + repr(row["text"][:40]),
              "" if same else f"\n  sandra {row['ids']}\n  llama  {ref}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    if "--compare-tokens" in sys.argv:
        compare_tokens(sys.argv[sys.argv.index("--compare-tokens") + 1])
    else:
        main()
