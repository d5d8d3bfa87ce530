"""A numpy ClientApp for Flower 1.8.0, run by Sepal's end-to-end tests.

`flower-client-app client:app --dir THIS_FOLDER ...`: each round it adds 1
to every value of the model it is sent and returns it; its evaluation
loss is the squared distance of the model to the constant 3.
"""

import flwr as fl
import numpy as np


class Client(fl.client.NumPyClient):
    def get_parameters(self, config):
        return [np.zeros(4, dtype=np.float32)]

    def fit(self, parameters, config):
        return [parameters[0] + np.float32(1)], 10, {}

    def evaluate(self, parameters, config):
        loss = float(np.sum((parameters[0] - 3.0) ** 2))
        return loss, 10, {}


def client_fn(cid: str):
    return Client().to_client()


app = fl.client.ClientApp(client_fn=client_fn)
