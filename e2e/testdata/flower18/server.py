"""A Flower 1.8.0 ServerApp for Sepal's end-to-end tests: FedAvg over two
nodes for SEPAL_TEST_ROUNDS rounds (default 10), every round training and
evaluating on both."""

import os

import flwr as fl

ROUNDS = int(os.environ.get("SEPAL_TEST_ROUNDS", "10"))

strategy = fl.server.strategy.FedAvg(
    min_fit_clients=2,
    min_evaluate_clients=2,
    min_available_clients=2,
    on_fit_config_fn=lambda server_round: {"server_round": server_round},
)

app = fl.server.ServerApp(
    config=fl.server.ServerConfig(num_rounds=ROUNDS),
    strategy=strategy,
)
