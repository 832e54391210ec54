"""The peer side of benchmarks/omniglot_speed.py: learn2learn's MAML on the same Conv4 step.

Runs in a PyTorch environment with learn2learn installed (not a dependency of mtpjax):

  PEER_PYTHON -m benchmarks.l2l_omniglot_step --steps 5 [--queries 1] [--tasks 32]

Prints one JSON line per timed meta-step: {"peer": "learn2learn", "seconds": ...}. Same model
as mtpjax's conv4 default (4 x [3x3 conv 64, GroupNorm(32), ReLU, 2x2 max-pool], linear head;
--norm batch_transductive: BatchNorm2d(track_running_stats=False), batch statistics only, as
mtpjax's option; in training this is what learn2learn's own Conv4 computes too),
second-order MAML, 1 inner SGD step at lr 0.4, Adam 1e-3, 5-way 1-shot, tasks drawn with
numpy from the same data (task sampling is included in the timed step, as it is in mtpjax).
"""

import argparse
import json
import time

import numpy as np
import torch
import learn2learn as l2l


def conv4(ways, filters=64, groups=32, norm="group"):
  layers, cin = [], 1
  for _ in range(4):
    if norm == "group":
      norm_layer = torch.nn.GroupNorm(groups, filters)
    else:  # statistics of the batch in hand, in training and in testing alike
      norm_layer = torch.nn.BatchNorm2d(filters, track_running_stats=False)
    layers += [torch.nn.Conv2d(cin, filters, 3, padding=1), norm_layer,
               torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    cin = filters
  return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(filters, ways))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", required=True, help="an .npy file of images [classes, 20, 28, 28]")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--tasks", type=int, default=32)
  parser.add_argument("--ways", type=int, default=5)
  parser.add_argument("--shots", type=int, default=1)
  parser.add_argument("--queries", type=int, default=1)
  parser.add_argument("--norm", default="group", choices=("group", "batch_transductive"))
  args = parser.parse_args()
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  data = torch.from_numpy(np.load(args.data).astype(np.float32) / 255.0)  # [C, 20, 28, 28]
  model = conv4(args.ways, norm=args.norm)
  maml = l2l.algorithms.MAML(model, lr=0.4, first_order=False)
  opt = torch.optim.Adam(maml.parameters(), 1e-3)
  loss_fn = torch.nn.CrossEntropyLoss()
  n = args.shots + args.queries

  def episode():
    classes = rng.choice(data.shape[0], args.ways, replace=False)
    idx = np.stack([rng.permutation(data.shape[1])[:n] for _ in classes])
    x = data[classes[:, None], idx]                       # [ways, n, 28, 28]
    y = torch.arange(args.ways)[:, None].expand(args.ways, n)
    sx, qx = x[:, :args.shots].reshape(-1, 1, 28, 28), x[:, args.shots:].reshape(-1, 1, 28, 28)
    sy, qy = y[:, :args.shots].reshape(-1), y[:, args.shots:].reshape(-1)
    return sx, sy, qx, qy

  for i in range(args.warmup + args.steps):
    start = time.perf_counter()
    opt.zero_grad()
    total = 0.0
    for _ in range(args.tasks):
      sx, sy, qx, qy = episode()
      learner = maml.clone()
      learner.adapt(loss_fn(learner(sx), sy))
      loss = loss_fn(learner(qx), qy) / args.tasks
      loss.backward()
      total += loss.item()
    opt.step()
    seconds = time.perf_counter() - start
    if i >= args.warmup:
      print(json.dumps({"peer": "learn2learn", "seconds": seconds, "loss": total,
                        "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
  main()
