# Chainlit writes its config, its files and its translations next to the
# app at start; the root is read-only, so the app runs from a copy in /tmp.
set -e
rm -rf /tmp/app && cp -r /opt/app /tmp/app && cd /tmp/app
exec /opt/venv/bin/chainlit run app.py --host 0.0.0.0 --port 8080 --headless
