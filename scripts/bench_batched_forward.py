"""Forward+backward of 5 stacked symbolic MLPs (4-20-20-2, 100 samples): torch.func vmap vs
stacked bmm with autograd vs the hand-written backward of bimt.training.batched vs 5 separate models.
Run: .venv/bin/python scripts/bench_batched_forward.py"""
import time, torch, copy
from torch.func import functional_call, stack_module_state, vmap, grad
import bimt
from bimt.training.batched import StackedMLP, _member_losses
torch.set_num_threads(1)
S = 5
members = []
for s in range(S):
    torch.manual_seed(s); members.append(bimt.BioMLP([4, 20, 20, 2]))
X = torch.rand(S, 100, 4) * 2 - 1
y = torch.randn(S, 100, 2)
stack = StackedMLP(members)
params, buffers = stack_module_state(members)
base = copy.deepcopy(members[0]).to("meta")
def loss_one(p, b, x, t):
    out = functional_call(base, (p, b), (x,))
    return ((out - t) ** 2).mean()
g_fn = vmap(grad(loss_one), in_dims=(0, 0, 0, 0))
def t_vmap():
    return g_fn(params, buffers, X, y)
def t_autograd():
    for p in stack.parameters(): p.grad = None
    _member_losses(stack(X), y, "mse").sum().backward()
def t_manual():
    stack.loss_and_grad(X, y, "mse")
def t_seq():
    for m in members:
        m.zero_grad(); ((m(X[0]) - y[0]) ** 2).mean().backward()
for name, f in [("vmap(grad(functional_call))", t_vmap), ("stacked bmm + autograd", t_autograd), ("stacked bmm + hand backward", t_manual), ("5 separate models, autograd", t_seq)]:
    for _ in range(50): f()
    best = []
    for r in range(5):
        t0 = time.perf_counter()
        for _ in range(500): f()
        best.append((time.perf_counter() - t0) / 500 * 1e3)
    print(f"{name:32s} {min(best):.3f} ms per forward+backward of {S} members")
