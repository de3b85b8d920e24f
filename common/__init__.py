"""What every stage agrees on: the names of features, splits, signatures and the model
(`features`), the class vocabulary (`labels`) and the classification metrics (`metrics`).

It imports no other package of the project; every other package may import it.
"""
