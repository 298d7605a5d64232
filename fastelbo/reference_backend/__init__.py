"""The "reference" backend: the math of the README in plain PyTorch ops, autograd-native, any
device. The oracle every fused backend is tested against and the fallback where none applies;
it never calls a fused kernel. (The public namespace that pins every call to it is
fastelbo.reference.)"""
