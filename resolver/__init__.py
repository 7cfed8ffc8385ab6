"""sinkhole: a DNS sinkhole resolver for organisations that have banned AI chatbots."""

__version__ = "0.1.0"
