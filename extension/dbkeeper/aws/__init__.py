"""AWS features: credentials from Secrets Manager or RDS IAM tokens (credentials.py), the fleet-wide
connection budget in DynamoDB (budget.py), CloudWatch Embedded Metric Format lines (metrics.py).

Nothing here is imported unless a setting turns a feature on, except metrics.py (no SDK: EMF is
a log line). sdk.py finds botocore without letting the function's own packages in."""
