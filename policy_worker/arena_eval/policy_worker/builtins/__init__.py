"""Policies that ship with arena-eval.

``simple`` (``zero``, ``random``) exercise the fabric without a model and are
the latency baselines; ``metaworld_expert`` gives a policy that actually
succeeds in Meta-World (an end-to-end check of the sim <-> pool loop); and
``torch_policy`` serves real checkpoints. The modules are imported by the
registry only when their policy is loaded, so importing this package stays
free of torch and Meta-World.
"""
