"""Verifiers that misbehave on purpose, for the tests of what the pipeline does about them."""

from jetspec.verifiers.greedy import GreedyVerifier


class NotAChild(GreedyVerifier):
    """Reports the accepted path [0, 10**6] from the device: a node the tree does not have."""

    def accept_on_device(self, tree, logits, state):
        packed = super().accept_on_device(tree, logits, state)
        packed[0], packed[2 : tree.max_depth + 2] = 2, 10**6
        return packed
