"""One module (or package) per AWS service, and nothing else talks to AWS.

``sessions`` makes the boto3 clients (the only importer of boto3); ``dynamodb`` is the
table (the only code that knows its keys and builds its expressions); ``sqs`` the work
queue (the only code that sends, receives, deletes or delays messages);
``cloudformation`` reads and deploys template.yaml's stack. A new AWS service rung
writes to gets its own module here.
"""
