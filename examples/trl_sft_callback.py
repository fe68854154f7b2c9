"""SFT with TRL while rlheal watches ID/OOD success and weight rotation at every save (docs/REAL_MODELS.md).

    MODEL=/models/Qwen2.5-0.5B-Instruct OUT=runs/sft-callback python examples/trl_sft_callback.py
"""

import os

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from rlheal.callbacks import RlhealCallback
from rlheal.rollout import Decoding
from rlheal.tasks import get_task

model, out = os.environ.get("MODEL", "/models/Qwen2.5-0.5B-Instruct"), os.environ.get("OUT", "runs/sft-callback")
steps, episodes = int(os.environ.get("STEPS", "200")), int(os.environ.get("EPISODES", "64"))
decoding = Decoding(max_new_tokens=int(os.environ.get("MAX_NEW_TOKENS", "256")))
task = get_task("gp24", profile="paper")
data = Dataset.from_list([{"prompt": [{"role": "user", "content": task.prompt(p)}],
                           "completion": [{"role": "assistant", "content": task.answer(p)}]}
                          for p in task.problems("id", seed=0, n=1000)])
args = SFTConfig(output_dir=out, max_steps=steps, save_steps=max(steps // 4, 1),
                 bf16=torch.cuda.is_available(), report_to="none")
callback = RlhealCallback(out, tasks=("gp24",), episodes=episodes, profile="paper", decoding=decoding)
SFTTrainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
print("\n".join(callback.alarms) or f"no OOD peak alarm; results in {out}/results.sqlite (rlheal results {out})")
