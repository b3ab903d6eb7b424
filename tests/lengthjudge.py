"""A judge for tests of the loop's machinery (kill/resume, determinism): it prefers the longer response,
so a tiny random model's samples are seldom tied and every iteration has training rows, whatever the
IFEval checks say about random bytes. Used as judge.name: python, judge.function: lengthjudge:by_length."""


def by_length(messages, responses):
    return [len(r) for r in responses]
