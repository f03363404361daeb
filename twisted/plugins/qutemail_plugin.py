"""
The twistd plugin: C{twistd -n qutemail --config PATH}.
"""
from twisted.application.service import ServiceMaker

qutemail = ServiceMaker(
    "QutEmail", "qutemail.tap", "QutEmail mail server (MTA, submission, Maildir)", "qutemail"
)
