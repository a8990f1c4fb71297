"""spend"""
