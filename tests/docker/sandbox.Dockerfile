# The test sandbox: Debian's static busybox (sh, wget, nslookup, nc, httpd, sleep) and pages
# for the test upstream.
FROM scratch
COPY bin /bin
COPY www /www
ENV PATH=/bin
CMD ["sh"]
