"""A numpy ServerApp for Flower 1.8.0, run by Sepal's end-to-end tests.

`flower-server-app server:app --dir THIS_FOLDER ...`: FedAvg over two
nodes for SEPAL_ROUNDS rounds (default 3), every round training and
evaluating on both, starting from zeros (SEPAL_MODEL_FLOATS values,
default 4). After each round it prints the mean of the model it
aggregated, which is the round's number when every array made the trip
whole.
"""

import os

import flwr as fl
import numpy as np
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

SIZE = int(os.environ.get("SEPAL_MODEL_FLOATS", "4"))


class CheckedFedAvg(fl.server.strategy.FedAvg):
    def aggregate_fit(self, server_round, results, failures):
        params, metrics = super().aggregate_fit(server_round, results, failures)
        mean = float(parameters_to_ndarrays(params)[0].mean())
        print(f"sepal-e2e round {server_round}: {len(results)} results, model mean {mean}", flush=True)
        return params, metrics


strategy = CheckedFedAvg(
    min_fit_clients=2,
    min_evaluate_clients=2,
    min_available_clients=2,
    initial_parameters=ndarrays_to_parameters([np.zeros(SIZE, dtype=np.float32)]),
    on_fit_config_fn=lambda server_round: {"server_round": server_round},
)
app = fl.server.ServerApp(
    config=fl.server.ServerConfig(num_rounds=int(os.environ.get("SEPAL_ROUNDS", "3"))),
    strategy=strategy,
)
