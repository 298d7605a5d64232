"""The public functional API, by op (each defined with its kernels' schemas, fakes, reference and
gradient rules in its module under fastelbo/ops/)."""
from .ops.bernoulli_log_prob import bernoulli_log_prob
from .ops.categorical_log_prob import categorical_log_prob
from .ops.continuous_bernoulli_log_prob import continuous_bernoulli_log_prob
from .ops.discretized_logistic_mixture_log_prob import discretized_logistic_mixture_log_prob
from .ops._autograd import PARAM_NAMES as PARAMS
from .ops.elbo import ESTIMATORS, KL_MODES, elbo
from .ops.gaussian_kl import gaussian_kl
from .ops.gaussian_latent import gaussian_latent
from .ops.gaussian_log_prob import gaussian_log_prob
from .ops.linear_bernoulli_log_prob import linear_bernoulli_log_prob
from .ops.linear_gaussian_log_prob import linear_gaussian_log_prob

__all__ = ["gaussian_latent", "gaussian_kl", "bernoulli_log_prob", "continuous_bernoulli_log_prob",
           "gaussian_log_prob", "categorical_log_prob", "discretized_logistic_mixture_log_prob", "elbo",
           "linear_bernoulli_log_prob",
           "linear_gaussian_log_prob"]
