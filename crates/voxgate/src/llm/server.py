# The offline LLM runtime voxgate starts as a child process (crates/voxgate/src/llm/local.rs):
# llama.cpp's server, embedded in the xllamacpp wheel, serving an OpenAI-compatible
# /v1/chat/completions on 127.0.0.1 with an ephemeral port.
# Prints one JSON line {"url": "http://127.0.0.1:PORT/v1"} once the model is loaded, then serves
# until its stdin closes (voxgate exited) or it receives SIGTERM.
import argparse, json, signal, sys, threading

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--ctx", type=int, default=2048)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--parallel", type=int, default=1)
a = ap.parse_args()

import xllamacpp as xlc

p = xlc.CommonParams()
p.model.path = a.model
p.n_ctx = a.ctx * a.parallel
p.n_parallel = a.parallel
p.cpuparams.n_threads = a.threads
p.cpuparams_batch.n_threads = a.threads
# Tool calls (the agent's end_call and transfer) need the model's Jinja chat template.
p.use_jinja = True
try:
    server = xlc.Server(p)
except Exception as e:  # a bad model file: say so and exit non-zero
    print(json.dumps({"error": str(e)}), flush=True)
    sys.exit(2)
url = server.listening_address.rstrip("/")
if not url.startswith("http"):
    url = "http://" + url
print(json.dumps({"url": url + "/v1"}), flush=True)

done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
done.wait()
