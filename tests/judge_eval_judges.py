"""Tiny synthetic judges for tests/test_judge_eval.py, used as judge.name: python, judge.function:
judge_eval_judges:NAME. A response is "text|v": its strength v is the number after the last "|"."""

BEATS = {("paper", "rock"), ("scissors", "paper"), ("rock", "scissors")}


def strength(response: str) -> float:
    return float(response.rsplit("|", 1)[1])


def ratio(messages, responses):
    """P(y_i ≻ y_j) = v_i / (v_i + v_j): any order gives the same matrix; equal strengths tie at ½."""
    v = [strength(r) for r in responses]
    return [[0.5 if i == j else v[i] / (v[i] + v[j]) for j in range(len(v))] for i in range(len(v))]


def first_biased(messages, responses):
    """ratio's P plus 0.15 for whichever response is shown first (capped at 1): a position bias."""
    P = ratio(messages, responses)
    for i in range(len(P)):
        for j in range(i + 1, len(P)):
            P[i][j] = min(1.0, P[i][j] + 0.15)
            P[j][i] = 1.0 - P[i][j]
    return P


def rock_paper_scissors(messages, responses):
    """Paper beats rock beats scissors beats paper (P = 0.9); anything else loses to those three (0.8)
    and ties with anything else (½): a cyclic judge."""
    names = ("rock", "paper", "scissors")
    k = len(responses)
    P = [[0.5] * k for _ in range(k)]
    for i, a in enumerate(responses):
        for j, b in enumerate(responses):
            if (a, b) in BEATS:
                P[i][j], P[j][i] = 0.9, 0.1
            elif a in names and b not in names:
                P[i][j], P[j][i] = 0.8, 0.2
    return P
