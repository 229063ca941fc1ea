"""Realistic bugs in lab 12: (name, text in the solution, replacement, questions that must lose points), and
correct alternatives (name, text in the solution, replacement) that must keep full marks."""

_FLAT_COPY_BACK = ("    for g, piece in zip(grads, torch.split(flat, [g.numel() for g in grads]), strict=True):\n"
                   "        g.copy_(piece.view_as(g))\n")

BUGS = [
    # Under SGD a sum doubles every step; the check uses SGD for this reason (Adam would hide it).
    ("gradients summed, not averaged", "            p.grad /= world_size\n", "", {"dist_allreduce"}),
    ("parameters all-reduced instead of gradients",
     "            dist.all_reduce(p.grad)\n            p.grad /= world_size",
     "            dist.all_reduce(p.data)\n            p.data /= world_size", {"dist_allreduce"}),
    ("frozen parameter not skipped (its .grad is None)",
     "        if p.grad is not None:\n            dist.all_reduce(p.grad)\n            p.grad /= world_size",
     "        dist.all_reduce(p.grad)\n        p.grad /= world_size", {"dist_allreduce"}),
    ("flat buffer averaged but never copied back", _FLAT_COPY_BACK, "", {"dist_bucketed"}),
    # Only rank 0 makes the collective: rank 0 waits, the launch ends with a message, and no rank is left behind.
    ("flat all_reduce on rank 0 only", "    dist.all_reduce(flat)\n",
     "    if dist.get_rank() == 0:\n        dist.all_reduce(flat)\n", {"dist_bucketed"}),
    ("owners dealt round-robin, ignoring sizes",
     "    owners = [0] * len(sizes)\n    load = [0] * world_size\n    for i in sorted(",
     "    return [i % world_size for i in range(len(sizes))]\n    load = [0] * world_size\n    for i in sorted(",
     {"dist_shard_owners"}),
    ("ZeRO-1 never broadcasts the updated parameters",
     "        for p, owner in zip(self.params, self.owners, strict=True):\n"
     "            dist.broadcast(p.data, src=owner)\n", "", {"dist_zero1"}),
    ("ZeRO-1 clears only the owned gradients",
     "        for p in self.params:\n            p.grad = None",
     "        self.optimizer.zero_grad()", {"dist_zero1"}),
    # The generator is used up by the sizes: the wrapped optimizer gets no parameter.
    ("ZeRO-1 keeps the parameters as a generator", "        self.params = list(params)\n",
     "        self.params = params\n", {"dist_zero1"}),
    ("DDP forward through the unwrapped model", "toy_loss(ddp_model, inputs, targets).backward()",
     "toy_loss(model, inputs, targets).backward()", {"dist_ddp"}),
    ("FSDP without the root fully_shard", "    fully_shard(model, mesh=mesh)\n", "", {"dist_fsdp"}),
    # The head's weight is the embedding's: a second FSDP unit for the embedding splits the tied pair.
    ("FSDP unit for the tied embedding on its own", "    for block in model.blocks:\n",
     "    for block in [model.embed, *model.blocks]:\n", {"dist_fsdp"}),
    ("ZeRO-1 accounting shards the gradients too (that is ZeRO-2)",
     "counts = (n_params, n_params, states_per_param * shard)", "counts = (n_params, shard, states_per_param * shard)",
     {"dist_memory"}),
    ("FSDP accounting forgets the optimizer's states per parameter",
     "counts = (shard, shard, states_per_param * shard)", "counts = (shard, shard, shard)", {"dist_memory"}),
    ("shard rounded down", "shard = math.ceil(n_params / world_size)", "shard = n_params // world_size",
     {"dist_memory"}),
]

CORRECT = [
    ("gradients averaged by the backend", "            dist.all_reduce(p.grad)\n            p.grad /= world_size",
     "            dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)"),
    ("flattening with torch's helpers",
     "    flat = torch.cat([g.reshape(-1) for g in grads])\n",
     "    flat = torch._utils._flatten_dense_tensors(grads)\n"),
    ("ZeRO-1 zeroes the gradients in place", "        for p in self.params:\n            p.grad = None",
     "        for p in self.params:\n            if p.grad is not None:\n                p.grad.zero_()"),
    ("shard rounded up with integer division", "shard = math.ceil(n_params / world_size)",
     "shard = -(-n_params // world_size)"),
    ("DDP optimizer on the model's own parameters", "optimizer = make_optimizer(ddp_model.parameters())",
     "optimizer = make_optimizer(model.parameters())"),
    ("FSDP with one unit: the root only", "    for block in model.blocks:\n        fully_shard(block, mesh=mesh)\n",
     ""),
]
