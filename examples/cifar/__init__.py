"""CIFAR-10 ResNet example."""
